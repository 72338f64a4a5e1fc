"""rsojax: training neural networks without gradients by RSO (Tripathi & Singh, arXiv 2005.05955)."""

from rsojax import memory, records
from rsojax.data import Dataset, load_mnist, load_npz
from rsojax.evaluation import accuracy, bn_statistics, predict
from rsojax.evaluators import EVALUATORS, Cached, Evaluator, Generic, Incremental, Uncached
from rsojax.layer_order import get_leaf, set_leaf, weight_order
from rsojax.losses import summed_cross_entropy
from rsojax.models import ResidualNet, Sequential, cifar10_resnet, mlp, mnist_convnet
from rsojax.rso import RSO, RSOConfig, RSOState, SweepMetrics
from rsojax.schedule import anneal, layer_sigma
from rsojax.train import (
    RSORun,
    SGDRun,
    Step,
    init_params,
    params_sha256,
    rso_trainer,
    run_labels,
    run_rso,
    run_sgd,
    start_rso,
    start_rso_runs,
    start_sgd,
)

__all__ = [
    "EVALUATORS",
    "RSO",
    "Cached",
    "Dataset",
    "Evaluator",
    "Generic",
    "Incremental",
    "RSOConfig",
    "RSORun",
    "RSOState",
    "ResidualNet",
    "SGDRun",
    "Step",
    "Sequential",
    "SweepMetrics",
    "Uncached",
    "accuracy",
    "anneal",
    "bn_statistics",
    "cifar10_resnet",
    "get_leaf",
    "init_params",
    "layer_sigma",
    "load_mnist",
    "load_npz",
    "mlp",
    "memory",
    "mnist_convnet",
    "params_sha256",
    "predict",
    "records",
    "rso_trainer",
    "run_labels",
    "run_rso",
    "run_sgd",
    "set_leaf",
    "start_rso",
    "start_rso_runs",
    "start_sgd",
    "summed_cross_entropy",
    "weight_order",
]
