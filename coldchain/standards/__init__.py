"""Standards data shipped with the kernel (GS1 Barcode Syntax Dictionary)."""
