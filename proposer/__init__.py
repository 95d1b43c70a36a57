"""Proposers: turn a context (program, incumbent code, ledger digest) into drafts.

This package never touches git or Ray; farm/ wires it to the store and the controller.
"""
