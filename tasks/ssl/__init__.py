"""Self-supervised representation learning (docs/algorithms.md, #local-self-supervised-learning to #evaluating-representations): local methods, their upload layouts,
one client's round (FedU/FedBYOL/FedEMA/FedAvg/standalone all run it), and the evaluation."""
