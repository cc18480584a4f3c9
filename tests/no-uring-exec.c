/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* no-uring-exec ERRNO PROGRAM [ARGS...]: run PROGRAM with io_uring_setup failing with ERRNO (ENOSYS or
 * EPERM), as under a seccomp filter or sysctl kernel.io_uring_disabled, without changing the machine. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned err;
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };

	if (argc < 3 || (strcmp(argv[1], "ENOSYS") && strcmp(argv[1], "EPERM"))) {
		fprintf(stderr, "usage: no-uring-exec ENOSYS|EPERM PROGRAM [ARGS...]\n");
		return 2;
	}
	err = strcmp(argv[1], "ENOSYS") ? EPERM : ENOSYS;
	filter[2].k = SECCOMP_RET_ERRNO | err;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
		perror("no-uring-exec: seccomp");
		return 77;
	}
	execv(argv[2], argv + 2);
	perror("no-uring-exec: execv");
	return 127;
}
