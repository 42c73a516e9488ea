"""The MNIST example: data loading (mnist.data) for the flagship CNN training job."""
