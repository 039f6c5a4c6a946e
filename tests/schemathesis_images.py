"""What `image/*` holds, for schemathesis: images of every format and mode the service reads
(schemathesis.toml loads this module). Without it, schemathesis fills an image part with bytes
of any format (a zip file, random bytes), which the service rightly refuses."""

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

# (format, modes it can save)
FORMATS = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB"],
    "WEBP": ["RGB", "RGBA"],
    "TIFF": ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "F"],
}


@st.composite
def images(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    colour = draw(st.integers(0, 255))
    buffer = io.BytesIO()
    Image.new("L", size, colour).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


schemathesis.openapi.media_type("image/*", images())
