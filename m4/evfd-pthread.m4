dnl SPDX-License-Identifier: LGPL-2.1-or-later
dnl AX_PTHREAD_SIMPLE: glibc has threads in libc; just make sure -pthread links.
AC_DEFUN([AX_PTHREAD_SIMPLE], [
  PTHREAD_CFLAGS=-pthread
  PTHREAD_LIBS=-pthread
  AC_SUBST([PTHREAD_CFLAGS])
  AC_SUBST([PTHREAD_LIBS])
])
