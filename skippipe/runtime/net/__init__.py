"""The network stack of a run: authenticated, framed TCP streams between nodes (on DecCom), the
wire format of their messages, link emulation on the sending side, and refusal logging."""
