"""Evaluation: task accuracy through lm-eval, general perplexity, size, decode speed."""

from taskprune.evaluation.accuracy import MC_TASK, prior_corrected_accuracy, run_lm_eval, write_task_yaml
from taskprune.evaluation.measure import evaluate_loaded
from taskprune.evaluation.perplexity import perplexity
from taskprune.evaluation.size import decode_tokens_per_s, size_metrics

__all__ = ["MC_TASK", "decode_tokens_per_s", "evaluate_loaded", "perplexity", "prior_corrected_accuracy",
           "run_lm_eval", "size_metrics", "write_task_yaml"]
