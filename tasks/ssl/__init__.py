"""Self-supervised representation learning (SPEC §1-§4): local methods, their upload layouts,
one client's round (FedU/FedBYOL/FedEMA/FedAvg/standalone all run it), and the evaluation."""
