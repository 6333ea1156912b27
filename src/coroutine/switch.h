/*
 * switch.h — the machine-level context switch under coroutine.c (internal).
 *
 * Two back ends with the same shape:
 *   asm       (switch-x86_64.S, switch-aarch64.S): saves the callee-saved
 *             registers on the current stack, stores the stack pointer,
 *             loads the other one.  A switch is a few dozen instructions.
 *   ucontext  (switch-ucontext.c): swapcontext(); portable, but it saves and
 *             restores the signal mask with a system call on every switch.
 * coroutine.c uses the one selected at build time (CO_SWITCH_ASM); the
 * benchmark calls both directly.
 *
 * Threading: all of these act on the calling thread only.
 */
#ifndef DISKSTACK_CO_SWITCH_H
#define DISKSTACK_CO_SWITCH_H

#include <stddef.h>
#include <ucontext.h>

/* Where a new context starts: fn(arg) on the new stack.  Never returns. */
typedef void CoStartFn(void *arg);

#if defined(__x86_64__) || defined(__aarch64__)
#define CO_HAVE_ASM_SWITCH 1
/* Saves the current context in *save_sp and resumes the one at load_sp. */
void co_switch_asm(void **save_sp, void *load_sp);
/* Prepares a stack [base, base+size) so that switching to the returned
 * stack pointer calls fn(arg). */
void *co_asm_prepare(void *base, size_t size, CoStartFn *fn, void *arg);
#endif

typedef struct CoUContext {
    ucontext_t uc;
} CoUContext;
void co_uc_prepare(CoUContext *ctx, void *base, size_t size,
                   CoStartFn *fn, void *arg);
void co_switch_ucontext(CoUContext *save, CoUContext *load);

#endif
