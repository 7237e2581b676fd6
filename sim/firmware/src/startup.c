/* Vector table and reset handler for the Cortex-M cores of the simulator. */
#include "sim.h"

extern uint32_t __stack_top;
extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end;

int main(void);
void reset_handler(void);
void systick_handler(void);
void fault_handler(void);
void default_handler(void);

typedef void (*vector_t)(void);

__attribute__((section(".vectors"), used)) static const vector_t vectors[16] = {
    (vector_t)&__stack_top,
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    fault_handler, /* SecureFault (v8-M) */
    0,
    0,
    0,
    default_handler, /* SVCall */
    default_handler, /* DebugMonitor */
    0,
    default_handler, /* PendSV */
    systick_handler,
};

void reset_handler(void)
{
    uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;) {
        *dst++ = 0u;
    }
    main();
    /* Returning from main is a firmware bug, as on hardware: report it like a fault. */
    fault_handler();
}

void fault_handler(void)
{
#ifdef SIM_SILENT_FAULTS
    /* As many vendor startup files do: spin in the handler, say nothing. */
    for (;;) {
    }
#else
    console_puts("\n" SIM_FAULT_MARKER "\n");
    for (;;) {
        __asm__ volatile("wfi");
    }
#endif
}

void default_handler(void) {}
