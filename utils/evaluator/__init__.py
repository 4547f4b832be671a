"""Evaluation: `evaluate(model_or_runtime, cfg) -> EvalResult`, scored by pycocotools."""
from utils.evaluator.evaluator import EvalResult, evaluate

__all__ = ['EvalResult', 'evaluate']
