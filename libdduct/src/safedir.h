/* safedir.h: a directory only this process's user can change. Internal. */
#ifndef DDUCT_SAFEDIR_H
#define DDUCT_SAFEDIR_H

#include <stddef.h>

/* dir (which exists) is owned by this process's effective user, its mode is made 0700 when
 * others may use it (a WARN in module mod naming what), and no directory above it lets
 * another user replace it: each is owned by root or by us, and is writable by others only
 * with the sticky bit (/tmp, /var/tmp) or by the root group or ours. Returns 0, or
 * DDUCT_EUNSAFE (or a negative errno) with err naming the directory and why. what names the
 * setting in messages ("file_dir", "cert_dir"). Symbolic links are followed: the checks apply
 * to the directory they lead to and to its parents. */
int dduct__dir_private(const char *dir, const char *what, const char *mod, char *err,
                       size_t errlen);

#endif
