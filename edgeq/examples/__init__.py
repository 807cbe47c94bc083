"""Package data: the embedded default model (`edgeq.example("mobilenet_v2")`) and the shipped Fashion-MNIST sample."""
