// Sleep and wake of the page: by the buttons, the lock screen, and the tab being hidden
// (asleep, the site sends no frames; a tab hidden while awake wakes when shown again).

/**
 * Binds sleep/wake to the tab's visibility. Returns `{sleep(auto), wake()}`; `auto`
 * means the tab went to sleep by being hidden (and so wakes by being shown).
 */
export function bindSleep({ vmi, session, notifications }) {
  let autoSlept = false;

  function sleep(auto) {
    if (vmi.asleep) return;
    vmi.asleep = true;
    autoSlept = !!auto;
    notifications.asleep();
    session.sleep();
  }

  function wake() {
    if (!vmi.asleep) return;
    vmi.asleep = false;
    autoSlept = false;
    notifications.awake();
    session.wake();
  }

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden' && !vmi.asleep) sleep(true);
    else if (document.visibilityState === 'visible' && vmi.asleep && autoSlept) wake();
    else session.pings.schedule();
  });

  return { sleep, wake };
}
