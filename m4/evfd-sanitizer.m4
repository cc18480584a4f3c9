dnl SPDX-License-Identifier: LGPL-2.1-or-later
dnl EVFD_SANITIZERS: --enable-asan (AddressSanitizer + UndefinedBehaviorSanitizer) and --enable-tsan
dnl (ThreadSanitizer). They cannot be combined. Sets SANITIZER_CFLAGS/SANITIZER_LDFLAGS and the automake
dnl conditional SANITIZE_THREAD (the test harness then loads tests/tsan.supp).
AC_DEFUN([EVFD_SANITIZERS], [
  AC_ARG_ENABLE([asan],
    [AS_HELP_STRING([--enable-asan], [build with AddressSanitizer and UndefinedBehaviorSanitizer])],
    [], [enable_asan=no])
  AC_ARG_ENABLE([tsan],
    [AS_HELP_STRING([--enable-tsan], [build with ThreadSanitizer])],
    [], [enable_tsan=no])
  AS_IF([test "x$enable_asan" = xyes && test "x$enable_tsan" = xyes],
    [AC_MSG_ERROR([--enable-asan and --enable-tsan cannot be used together])])
  SANITIZER_CFLAGS=
  evfd_sanitizers=
  AS_IF([test "x$enable_asan" = xyes], [
    SANITIZER_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    evfd_sanitizers="address,undefined"])
  AS_IF([test "x$enable_tsan" = xyes], [
    SANITIZER_CFLAGS="-fsanitize=thread -fno-omit-frame-pointer"
    evfd_sanitizers="thread"])
  AS_IF([test -n "$SANITIZER_CFLAGS"], [
    AC_MSG_CHECKING([whether $CC accepts $SANITIZER_CFLAGS])
    evfd_save_CFLAGS=$CFLAGS; evfd_save_LDFLAGS=$LDFLAGS
    CFLAGS="$CFLAGS $SANITIZER_CFLAGS"; LDFLAGS="$LDFLAGS $SANITIZER_CFLAGS"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([], [])], [AC_MSG_RESULT([yes])],
      [AC_MSG_RESULT([no]); AC_MSG_ERROR([$CC cannot build with $SANITIZER_CFLAGS])])
    CFLAGS=$evfd_save_CFLAGS; LDFLAGS=$evfd_save_LDFLAGS])
  SANITIZER_LDFLAGS=$SANITIZER_CFLAGS
  AC_SUBST([SANITIZER_CFLAGS])
  AC_SUBST([SANITIZER_LDFLAGS])
  AM_CONDITIONAL([SANITIZE_THREAD], [test "x$enable_tsan" = xyes])
  AM_CONDITIONAL([SANITIZE_ADDRESS], [test "x$enable_asan" = xyes])
])
