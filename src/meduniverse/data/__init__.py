"""Reading and checking image datasets: MedMNIST-style npz, the medmnist package's files, synthetic
sites."""
