"""The sweep's orchestration: a short loop (``driver``) over a Search (what runs next),
an Executor (where it runs) and the Record (what is written).
"""
