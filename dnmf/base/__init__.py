"""What every dnmf estimator shares: the estimator base class, the model registry, input resolution."""
