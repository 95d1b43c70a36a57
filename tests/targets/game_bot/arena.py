"""Plays bot.move against fixed opponents from every heap size; deterministic."""

import bot

OPPONENTS = {
    "greedy": lambda heap: min(3, heap),
    "cautious": lambda heap: 1,
    "expert": lambda heap: heap % 4 or 1,
}


def play(first, second, heap):
    """1 when `first` takes the last stone."""
    players, turn = (first, second), 0
    while True:
        heap -= max(1, min(3, heap, players[turn](heap)))
        if heap == 0:
            return 1 - turn
        turn = 1 - turn


wins = games = 0
for opponent in OPPONENTS.values():
    for heap in range(5, 25):
        wins += play(bot.move, opponent, heap)
        wins += 1 - play(opponent, bot.move, heap)
        games += 2
print(f"games: {games}")
print(f"score: {3 * wins}")
print(f"win_rate: {wins / games:.4f}")
