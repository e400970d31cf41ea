"""Files the package keeps: written whole or not at all (`atomic`), and lock files naming their holder (`locks`)."""
