"""The data path up to the model: tokenizer, images, records, samples, PDFs, sources, MDS conversion, the Streaming dataset."""
