#!/usr/bin/env python3
"""Embed a file in the library as a C array: embed.py IN OUT NAME.
Writes `const char NAME[]` (NUL-terminated) and `const size_t NAME_len` (without the NUL)."""
import sys

src, out, name = sys.argv[1:4]
data = open(src, 'rb').read()
with open(out, 'w') as f:
    f.write('/* Generated from %s by embed.py: do not edit. */\n#include <stddef.h>\n\n' %
            src.replace('\\', '/').split('/')[-1])
    f.write('const char %s[] = {\n' % name)
    for i in range(0, len(data), 16):
        f.write('  ' + ', '.join('0x%02x' % b for b in data[i:i + 16]) + ',\n')
    f.write('  0x00};\nconst size_t %s_len = %d;\n' % (name, len(data)))
