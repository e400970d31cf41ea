"""CIFAR-10: where it comes from and how it is loaded and checked (`cifar10`), the copies on disk it reads
(`files`), and the post's train/validation/test splits (`splits`)."""
