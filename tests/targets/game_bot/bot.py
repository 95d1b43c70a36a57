"""The bot: how many stones to take from a heap. The agent edits this file."""

MODULUS = 3  # take heap % MODULUS when that is a legal move
FALLBACK = 1  # what to take otherwise


def move(heap):
    take = heap % MODULUS
    if not 1 <= take <= 3:
        take = FALLBACK
    return max(1, min(take, 3, heap))
