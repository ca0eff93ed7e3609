"""nanoocr: DeepSeek-OCR's DeepEncoder in front of a nanochat GPT, trained with Composer."""
