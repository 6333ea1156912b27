/*
 * switch-aarch64.S — coroutine context switch for AArch64 (AAPCS64).
 *
 * void co_switch_asm(void **save_sp, void *load_sp)
 *
 * Stores the callee-saved registers x19-x28, fp (x29), lr (x30), d8-d15 and
 * FPCR in a 176-byte frame on the current stack, stores sp in *save_sp, loads
 * load_sp, restores the same frame from there and returns through the loaded
 * lr: where that context called co_switch_asm, or co_asm_start for a fresh
 * coroutine (see co_asm_prepare in coroutine.c).
 */
    .text
    .globl co_switch_asm
    .type co_switch_asm, %function
    .p2align 4
co_switch_asm:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mrs x9, fpcr
    str x9, [sp, #160]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    ldr x9, [sp, #160]
    msr fpcr, x9
    add sp, sp, #176
    ret
    .size co_switch_asm, .-co_switch_asm

/* First code of a fresh coroutine: fn in x19, its argument in x20.  blr,
 * not br: a "bti c" landing pad at fn accepts calls from any register. */
    .globl co_asm_start
    .type co_asm_start, %function
    .p2align 4
co_asm_start:
    mov x29, #0
    mov x30, #0
    mov x0, x20
    blr x19
    brk #0          /* fn never returns */
    .size co_asm_start, .-co_asm_start

    .section .note.GNU-stack,"",%progbits
