"""Features of the training loop as callbacks: each hooks into the loop's named events (`base.Callback`).

The loop itself only restores, steps, validates and checkpoints; everything optional (or merely
bookkeeping) lives here, one small module each. None of these modules imports torch at import time.
"""
