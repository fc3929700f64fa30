"""Evaluation, below the evaluate stage: benchmark data (``data``), judge prompts and verdicts (``judging``), scores
(``scores``), win rates (``winrate``), the lm-eval pass-through (``lmeval``) and the results table (``tables``).
The stage (``stages/evaluate.py``) answers, judges and caches; the report imports the table, not the stage."""
