"""Numbers every trial shares, solo or packed, written once."""

EVAL_SEED = (
    1_000_003  # evaluation at epoch e draws from Generator().manual_seed(EVAL_SEED * e): the same for every trial
)
SGD_MOMENTUM = 0.9  # train.optimizer "sgd" is SGD with this momentum
