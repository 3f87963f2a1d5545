"""`invsr train`: fine-tuning the noise predictor (losses, discriminator, latent LPIPS, the loop, run folders)."""
