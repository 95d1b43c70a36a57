"""One root exception; each subclass names what went wrong so the CLI can say what to fix."""

from collections.abc import Sequence


class FarmError(Exception):
    """Root of every error farm raises on purpose."""


class ConfigError(FarmError):
    """farm.toml (or a CLI flag) is invalid: the message names the key and the file."""


class TargetError(FarmError):
    """The target repo cannot be used as it is (not a git repo, dirty files, missing command)."""


class GitError(FarmError):
    """A git command failed."""


class StoreError(FarmError):
    """The store cannot be opened or used (unknown URL, server down, incompatible version)."""


class StateMoveRefused(StoreError):
    """A record was written in a state it may not move to from the one it is in."""


class CampaignTaken(FarmError):
    """Another process drives the campaign (`farm run` or `farm control`)."""


class ResourceError(FarmError):
    """No node of the cluster can ever satisfy a trial's resource request."""


class ProposerError(FarmError):
    """A proposer backend cannot go on (the LLM API refused or stayed unavailable)."""


class ProposerUnavailable(ProposerError):
    """The LLM API stayed unavailable through its retries (429, 529, 5xx, timeouts): the
    proposer role backs off and tries again, up to `proposer.max_failed_batches` times."""


class SpendCapReached(ProposerError):
    """The ledger's LLM spend reached `proposer.spend_cap_usd`: a clean stop, not a failure."""


class RefMismatch(GitError):
    """A farm branch is not where the store says: something outside farm moved it, or the
    store lost writes (`farm_commits`: commits farm made there that the store does not know)."""

    def __init__(
        self, branch: str, *, expected: str, found: str | None, farm_commits: Sequence[str] = ()
    ) -> None:
        self.branch, self.expected, self.found = branch, expected, found
        where = (
            f"{branch} is at {found[:12] if found else 'nothing (deleted)'}, but the store says "
            f"{expected[:12]}"
        )
        if farm_commits:
            listed = ", ".join(sha[:10] for sha in farm_commits)
            super().__init__(
                f"{where}, and the branch holds {len(farm_commits)} commits farm made that the "
                f"store does not know ({listed}): the store has most likely lost writes (a "
                "Redis restarted without AOF, a store restored from a backup). Restore the "
                "newest store you have; `farm run --repair-refs` would move the branch back "
                "over that kept work (it lists the commits and asks first)"
            )
            return
        super().__init__(
            f"{where}: something outside farm moved it (a candidate outside a strict sandbox "
            "can). Inspect it, then run `farm run --repair-refs` to put farm's branches back "
            "where the store says and resume (it lists any commit that would be discarded "
            "and asks first)"
        )
