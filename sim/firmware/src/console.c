/* Console on the CMSDK APB UART0 and a SysTick-driven sleep that idles the core (WFI), so an
 * idle firmware costs the host no CPU under QEMU. */
#include "sim.h"

#define UART_CTRL_TX_ENABLE 0x1u

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE_TICKINT_CPUCLK 0x7u
#define TICK_HZ 100u

static volatile uint32_t ticks;

void systick_handler(void) { ticks++; }

void console_init(void)
{
    UART_BAUDDIV(UART0_BASE) = 16u;
    UART_CTRL(UART0_BASE) = UART_CTRL_TX_ENABLE;
    SYST_RVR = SYSCLK_HZ / TICK_HZ - 1u;
    SYST_CVR = 0u;
    SYST_CSR = SYST_CSR_ENABLE_TICKINT_CPUCLK;
}

void uart_putc(uint32_t base, char c)
{
    while (UART_STATE(base) & UART_STATE_TX_FULL) {
    }
    UART_DATA(base) = (uint32_t)(unsigned char)c;
}

void uart_puts(uint32_t base, const char *text)
{
    while (*text) {
        uart_putc(base, *text++);
    }
}

void uart_putu(uint32_t base, uint32_t value)
{
    char digits[10];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value);
    while (count) {
        uart_putc(base, digits[--count]);
    }
}

void console_putc(char c) { uart_putc(UART0_BASE, c); }

void console_puts(const char *text) { uart_puts(UART0_BASE, text); }

void console_putu(uint32_t value) { uart_putu(UART0_BASE, value); }

void sleep_ms(uint32_t ms)
{
    uint32_t until = ticks + (ms * TICK_HZ + 999u) / 1000u;
    while ((int32_t)(until - ticks) > 0) {
        __asm__ volatile("wfi");
    }
}

uint32_t uptime_ms(void) { return ticks * (1000u / TICK_HZ); }
