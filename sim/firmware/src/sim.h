/* The firmware SDK of smarter-sim: a console on the machine's UART0 and a millisecond sleep.
 *
 * The builder (sim/firmware_build.py) defines per core:
 *   CPU_NAME     the core type as a string, e.g. "cortex-m4"
 *   UART0_BASE   the CMSDK APB UART0 of the QEMU machine for that core
 *   SYSCLK_HZ    the machine's system clock (drives SysTick)
 */
#ifndef SMARTER_SIM_H
#define SMARTER_SIM_H

#include <stdint.h>

/* What the fault handler prints; the simulator reads it on the console and marks the core
 * crashed. Firmware from other SDKs can print the same line to be recognised. */
#define SIM_FAULT_MARKER "*** HardFault ***"

void console_init(void);
void console_putc(char c);
void console_puts(const char *text);
void console_putu(uint32_t value);
void sleep_ms(uint32_t ms);

#endif
