"""Image quality: the Real-ESRGAN degradations (``degrade``), PSNR/SSIM (``metrics``) and LPIPS-VGG (``lpips``)."""
