// l2emu_switch(void** save_sp, void* load_sp): saves the callee-saved registers of the running fiber on its
// stack, stores its stack pointer in *save_sp, and resumes the fiber whose stack pointer is load_sp
// (System V x86-64; the SSE/x87 control words are the same for every fiber and not switched).
    .text
    .globl l2emu_switch
    .type l2emu_switch, @function
l2emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size l2emu_switch, .-l2emu_switch
    .section .note.GNU-stack,"",@progbits
