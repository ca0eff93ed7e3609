"""How many vision vectors an image becomes: the one formula of the token layout (pure Python, no torch,
so the data path and `inspect_image` use it without loading the model)."""


def layout_tokens(nq: int, tiles: tuple[int, int] = (1, 1), nc: int = 10) -> int:
    """Vision vectors (= `<|image|>` positions) of one image whose global view is an nq x nq grid and whose
    `tiles` (w, h) crops, unless (1, 1), are nc x nc grids stitched into one (nc*h) x (nc*w) grid: a newline
    after every row of each grid, one view separator. The one formula of the token layout:
    `nanoocr.data.images.count_tokens` (modes) and `nanoocr.model.vlm.image_token_count` (a model config's
    grid) both use it. nc defaults to a 640 px tile at 64 px per token."""
    tokens = nq * (nq + 1) + 1
    w_tiles, h_tiles = tiles
    if (w_tiles, h_tiles) != (1, 1):
        tokens += (nc * h_tiles) * (nc * w_tiles + 1)
    return tokens
