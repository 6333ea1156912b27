/*
 * switch-x86_64.S — coroutine context switch for x86-64 (System V ABI).
 *
 * void co_switch_asm(void **save_sp, void *load_sp)
 *
 * Pushes the callee-saved registers (rbp, rbx, r12-r15) and the MXCSR and x87
 * control words (also callee-saved by the ABI), stores rsp in *save_sp,
 * switches to load_sp and pops the same frame from there.  The return
 * address on the new stack is where that context called co_switch_asm, or
 * co_asm_start for a fresh coroutine (see co_asm_prepare in coroutine.c).
 */
    .text
    .globl co_switch_asm
    .type co_switch_asm, @function
    .p2align 4
co_switch_asm:
    /* No CFI here: halfway through, rsp belongs to the other stack. */
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size co_switch_asm, .-co_switch_asm

/*
 * First code of a fresh coroutine: co_asm_prepare put fn in r12 and its
 * argument in r13.  rsp is 8 mod 16 here, as at any function entry, and the
 * slot above holds a zero return address so unwinders stop.
 */
    .globl co_asm_start
    .type co_asm_start, @function
    .p2align 4
co_asm_start:
    .cfi_startproc
    .cfi_undefined rip
    xorl %ebp, %ebp
    movq %r13, %rdi
    jmp *%r12
    .cfi_endproc
    .size co_asm_start, .-co_asm_start

    .section .note.GNU-stack,"",@progbits
