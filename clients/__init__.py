"""The Flower client: translate between Flower messages and a task's local round (tasks/).

One NumPyClient serves every task (task_client.py); what it remembers between rounds lives in
Flower's context.state and, for resume, on its own disk (state_store.py); faults.py injects
failures on purpose so that tests can see what a run survives.
"""
