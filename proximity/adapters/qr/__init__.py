"""QR codes: camera frames decoded by zxing-cpp and zbar, 2D scanners on serial lines,
and rendering signed codes with ``qrcode``."""
