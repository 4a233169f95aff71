"""Metric protocols shared by the models (restoration: PSNR/SSIM)."""
