// An accessible tab list (WAI-ARIA tabs pattern): role=tablist of <button role=tab>, roving tabindex,
// Left/Right/Up/Down/Home/End move and select, the panel is labelled by the selected tab.

export interface TabSpec {
  key: string;
  label: string;
  title?: string;
  className?: string;
}

export class TabList {
  private tabs: TabSpec[] = [];
  private selected = "";
  private buttons: HTMLButtonElement[] = [];

  constructor(
    private el: HTMLElement,
    private panel: HTMLElement,
    private prefix: string,
    private onSelect: (key: string) => void,
  ) {
    el.setAttribute("role", "tablist");
    panel.setAttribute("role", "tabpanel");
    el.addEventListener("keydown", (e) => this.keydown(e));
  }

  get current(): string {
    return this.selected;
  }

  set(tabs: TabSpec[], selected: string) {
    this.tabs = tabs;
    this.el.replaceChildren();
    this.buttons = tabs.map((t, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.setAttribute("role", "tab");
      b.id = `${this.prefix}-tab-${i}`;
      b.dataset.key = t.key;
      b.textContent = t.label;
      if (t.title) b.title = t.title;
      if (t.className) b.className = t.className;
      b.setAttribute("aria-controls", this.panel.id);
      b.addEventListener("click", () => this.select(t.key, true));
      this.el.appendChild(b);
      return b;
    });
    this.mark(tabs.some((t) => t.key === selected) ? selected : (tabs[0]?.key ?? ""));
  }

  /** Selects a tab; calls onSelect when the user did it. */
  select(key: string, notify: boolean) {
    this.mark(key);
    if (notify) this.onSelect(key);
  }

  focusSelected() {
    this.buttons.find((b) => b.dataset.key === this.selected)?.focus();
  }

  private mark(key: string) {
    this.selected = key;
    for (const b of this.buttons) {
      const on = b.dataset.key === key;
      b.setAttribute("aria-selected", String(on));
      b.tabIndex = on ? 0 : -1;
      if (on) this.panel.setAttribute("aria-labelledby", b.id);
    }
    if (!this.buttons.length) this.panel.removeAttribute("aria-labelledby");
  }

  private keydown(e: KeyboardEvent) {
    const i = this.tabs.findIndex((t) => t.key === this.selected);
    if (i < 0) return;
    let j = i;
    if (e.key === "ArrowRight" || e.key === "ArrowDown") j = (i + 1) % this.tabs.length;
    else if (e.key === "ArrowLeft" || e.key === "ArrowUp") j = (i - 1 + this.tabs.length) % this.tabs.length;
    else if (e.key === "Home") j = 0;
    else if (e.key === "End") j = this.tabs.length - 1;
    else return;
    e.preventDefault();
    this.select(this.tabs[j].key, true);
    this.buttons[j].focus();
    this.buttons[j].scrollIntoView({ block: "nearest", inline: "nearest" });
  }
}
