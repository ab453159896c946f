/*
 * measure: run a command, report its wall time, CPU time and peak RSS.
 *
 *   measure OUT -- COMMAND [ARG...]
 *
 * Appends one line to the file OUT when the command ends:
 *   wall=SECONDS user=SECONDS sys=SECONDS maxrss=KB status=CODE
 * CPU time and peak RSS come from wait4(): they cover the command and every
 * descendant it waited for (a shell's curl and sync included), which bash's
 * `times` or /proc/PID/stat of one process would not. Bench-only code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds(const struct timeval *t)
{
    return (double)t->tv_sec + (double)t->tv_usec / 1e6;
}

static double now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    struct rusage ru;
    double t0, wall;
    int status = 0, code;
    pid_t pid;
    FILE *out;

    if (argc < 4 || strcmp(argv[2], "--") != 0) {
        fprintf(stderr, "usage: measure OUT -- COMMAND [ARG...]\n");
        return 2;
    }
    t0 = now();
    pid = fork();
    if (pid < 0) {
        perror("measure: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[3], argv + 3);
        perror("measure: exec");
        _exit(127);
    }
    if (wait4(pid, &status, 0, &ru) != pid) {
        perror("measure: wait4");
        return 2;
    }
    wall = now() - t0;
    code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    out = fopen(argv[1], "a");
    if (!out) {
        perror("measure: opening the output");
        return 2;
    }
    fprintf(out, "wall=%.6f user=%.6f sys=%.6f maxrss=%ld status=%d\n", wall,
            seconds(&ru.ru_utime), seconds(&ru.ru_stime), ru.ru_maxrss, code);
    return fclose(out) == 0 ? code : 2;
}
