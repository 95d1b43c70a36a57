"""What runs on a worker node: materialise a trial's code, run it sandboxed, parse its metric."""
