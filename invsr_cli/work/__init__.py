"""The unit of work: process_images (one image with its settings -> one Outcome), batching, finishing and writing, inputs, outcomes and reporters."""
