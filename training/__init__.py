"""Training side (torch): data set maker, trainers and the demo family's recipe. The data set maker itself is torch-free."""
