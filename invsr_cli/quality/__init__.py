"""Image quality: the Real-ESRGAN degradations (pure numpy/OpenCV) and the metrics (PSNR, SSIM, LPIPS)."""
