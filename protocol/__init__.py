"""The NumPy-only floor that the server (strategies/) and the clients (clients/, tasks/) share.

No torch and no Flower here: the upload layout and its checks (layout.py), what a client is
told each round (instructions.py), the weight maths (weights.py), the services a strategy is
given and what it reports (hooks.py, fields.py), typed configuration checks (checks.py), and
short lists of ids in messages (messages.py).
"""
