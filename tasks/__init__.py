"""All torch code: data, partitions, models, SSL methods, training and evaluation."""
