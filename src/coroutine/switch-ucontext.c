/*
 * switch-ucontext.c — portable context switch on makecontext/swapcontext.
 *
 * makecontext() passes only int arguments, so the start function and its
 * argument are split into 32-bit halves.  Always compiled (the benchmark
 * compares it with the asm switch); coroutine.c uses it when CO_SWITCH_ASM
 * is not set.  Threading: calling thread only.
 */
#include <stdint.h>
#include <stdlib.h>
#include <ucontext.h>

#include "coroutine/switch.h"

static void *join_ptr(unsigned int hi, unsigned int lo)
{
    return (void *)(((uintptr_t)hi << 16 << 16) | (uintptr_t)lo);
}

static void uc_start(unsigned int fn_hi, unsigned int fn_lo,
                     unsigned int arg_hi, unsigned int arg_lo)
{
    CoStartFn *fn = (CoStartFn *)join_ptr(fn_hi, fn_lo);

    fn(join_ptr(arg_hi, arg_lo));
    abort();    /* a coroutine start function never returns */
}

void co_uc_prepare(CoUContext *ctx, void *base, size_t size,
                   CoStartFn *fn, void *arg)
{
    uintptr_t f = (uintptr_t)fn, a = (uintptr_t)arg;

    if (getcontext(&ctx->uc) < 0) {
        abort();
    }
    ctx->uc.uc_stack.ss_sp = base;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_link = NULL;
    makecontext(&ctx->uc, (void (*)(void))uc_start, 4,
                (unsigned int)(f >> 16 >> 16), (unsigned int)f,
                (unsigned int)(a >> 16 >> 16), (unsigned int)a);
}

void co_switch_ucontext(CoUContext *save, CoUContext *load)
{
    if (swapcontext(&save->uc, &load->uc) < 0) {
        abort();
    }
}
