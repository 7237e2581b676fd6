/* The firmware SDK of smarter-sim: a console on the machine's UART0, a data channel on its
 * UART1 and a millisecond clock.
 *
 * The builder (sim/firmware_build.py) defines per core:
 *   CPU_NAME     the core type as a string, e.g. "cortex-m4"
 *   UART0_BASE   the CMSDK APB UART0 of the QEMU machine for that core (the console)
 *   UART1_BASE   its UART1 (the data channel)
 *   SYSCLK_HZ    the machine's system clock (drives SysTick)
 */
#ifndef SMARTER_SIM_H
#define SMARTER_SIM_H

#include <stdint.h>

/* What the fault handler prints; the simulator reads it on the console and marks the core
 * crashed. Firmware from other SDKs can print the same line to be recognised. */
#define SIM_FAULT_MARKER "*** HardFault ***"

/* What a firmware writes to UART1 to announce its data channel (a board's firmware creates an
 * rpmsg endpoint instead); the simulator publishes the channel's tty when it reads it and never
 * passes it on. Firmware from other SDKs can write the same bytes. */
#define SIM_CHANNEL_ANNOUNCE "\x1b[rpmsg-announce rpmsg-tty]\n"

/* The CMSDK APB UART the console (UART0) and the data channel (UART1) both are. */
#define UART_DATA(base) (*(volatile uint32_t *)((base) + 0x00u))
#define UART_STATE(base) (*(volatile uint32_t *)((base) + 0x04u))
#define UART_CTRL(base) (*(volatile uint32_t *)((base) + 0x08u))
#define UART_BAUDDIV(base) (*(volatile uint32_t *)((base) + 0x10u))
#define UART_STATE_TX_FULL 0x1u
#define UART_STATE_RX_FULL 0x2u

void uart_putc(uint32_t base, char c);
void uart_puts(uint32_t base, const char *text);
void uart_putu(uint32_t base, uint32_t value);

/* The longest line channel_poll_line keeps; the rest of a longer line is dropped. */
#define CHANNEL_LINE_MAX 80u

void console_init(void);
void console_putc(char c);
void console_puts(const char *text);
void console_putu(uint32_t value);
void sleep_ms(uint32_t ms);
uint32_t uptime_ms(void);

/* A line being received on the data channel; start it zeroed. */
struct channel_line {
    char text[CHANNEL_LINE_MAX + 1u];
    uint32_t length;
    int overlong;
};

void channel_open(void);
void channel_putc(char c);
void channel_puts(const char *text);
void channel_putu(uint32_t value);
int channel_getc(void);
int channel_poll_line(struct channel_line *line);
void channel_idle(void);
int parse_u32(const char *text, uint32_t *value);

#endif
