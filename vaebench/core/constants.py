"""Numbers every trial shares, solo or packed, written once."""

# evaluation at epoch e draws from Generator().manual_seed(EVAL_SEED * e): the same noise for every trial
EVAL_SEED = 1_000_003
SGD_MOMENTUM = 0.9  # train.optimizer "sgd" is SGD with this momentum
