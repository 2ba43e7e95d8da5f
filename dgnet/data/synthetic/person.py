"""The person as part labels at SS scale, walking, seen from the front, the back or a side. The labels
depend on STRUCTURE_FIELDS only (the chest logo lies inside the torso), so the mask does too. Each limb
has its own label: an outline then parts an arm from a torso in the same shirt, and sleeves and shorts
are cut along the limb's own axis."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from PIL import Image

from dgnet.data.synthetic.canvas import Pen, Point
from dgnet.data.synthetic.factors import H, W, get_choice, get_number

SKIN, HAND, HAIR, TOP, ARM_A, ARM_B, PELVIS, LEG_A, LEG_B, SHOE = range(1, 11)
HAT, HAT_DARK, BAG, BAG_DARK, LOGO, EYE = range(11, 17)

# Head shapes in head units, (label, x, y, rx, ry[, arc start, end]): x, y from the head centre in
# radii (x towards the face in side views), the radii in head radii; an arc makes a chord.
_HEAD = {
    "front": ((HAIR, 0, -0.08, 1.07, 1.04), (SKIN, 0, 0.16, 0.93, 0.84)),
    "back": ((SKIN, 0, 0, 1, 1), (HAIR, 0, -0.12, 1.06, 0.94)),
    "side": ((SKIN, 0, 0, 1.04, 1), (SKIN, 0.98, 0.12, 0.16, 0.16),  # the nose
             (HAIR, -0.12, -0.08, 1.1, 1.02, 180, 360), (HAIR, -0.45, 0.05, 0.66, 0.72),
             (EYE, 0.5, 0.02, 0.1, 0.09)),
}
_SHORT_CUT = (SKIN, 0, 0.16, 0.98, 0.86, 0, 180)  # a short cut leaves the ears and jaw free
_EYES = ((EYE, -0.36, 0.22, 0.11, 0.09), (EYE, 0.36, 0.22, 0.11, 0.09))
_CAP = (HAT, 0, -0.22, 1.1, 0.88, 180, 360)
_CAP_BRIM = {"front": (HAT_DARK, 0, -0.22, 1.12, 0.17), "side": (HAT_DARK, 1.15, -0.2, 0.72, 0.13)}
_BEANIE = (HAT, 0, -0.15, 1.12, 1.05, 180, 360)


def _limb(root: Point, a1: float, a2: float, l1: float, l2: float, side: float, spread: float):
    """Joint positions of a two-segment limb; a1, a2: its segments' angles from the vertical (+ =
    forwards); side: +1 / -1 the way a side view faces, 0 in front and back views, where a swing only
    foreshortens the limb and `spread` moves it sideways."""
    if side:
        mid = (root[0] + side * l1 * math.sin(a1), root[1] + l1 * math.cos(a1))
        end = (mid[0] + side * l2 * math.sin(a2), mid[1] + l2 * math.cos(a2))
    else:
        mid = (root[0] + spread * 0.5, root[1] + l1 * math.cos(a1))
        end = (root[0] + spread, mid[1] + l2 * math.cos(a2))
    return mid, end


# Walking cycle: legs swing opposite each other, arms opposite the legs; the leg coming forward
# bends its knee. Angles in radians from the vertical, positive = forwards.
def _leg_angles(p: float) -> tuple[float, float]:
    thigh = 0.46 * math.sin(p)
    return thigh, thigh - 0.62 * max(0.0, math.cos(p)) ** 1.5


def _arm_angles(p: float) -> tuple[float, float]:
    upper = -0.36 * math.sin(p)
    return upper, upper + 0.22 + 0.2 * max(0.0, -math.sin(p))


class Figure:
    """The geometry of one person; `draw` paints its labels. `limbs` maps each limb label to its
    (root, joint, end) points once drawn: the colouring cuts sleeves and shorts along them."""

    def __init__(self, f: Mapping[str, Any], labels: Image.Image):
        self.view = get_choice(f, "viewpoint")
        self.hair_length = get_choice(f, "hair_length")
        self.hat = get_choice(f, "hat")
        self.bag = get_choice(f, "bag")
        self.texture = get_choice(f, "top_texture")
        self.bw = bw = get_number(f, "body_width")
        # u: the standing height, head top to sole
        self.u = u = 112.0 * get_number(f, "body_height") * get_number(f, "scale")
        self.phase = get_number(f, "pose_phase")
        self.cx = cx = W / 2 + get_number(f, "dx")
        self.feet_y = H - 4 + get_number(f, "dy")
        self.side = side = {"left": -1.0, "right": 1.0}.get(self.view, 0.0)
        self.pen = Pen(labels)
        self.limbs: dict[int, tuple[Point, Point, Point]] = {}

        self.l_thigh, self.l_shin, self.l_up, self.l_fore = 0.255 * u, 0.235 * u, 0.165 * u, 0.155 * u
        # The hip height is set so that the lower foot stands on the floor (the body bobs).
        drops = [self.l_thigh * math.cos(a) + self.l_shin * math.cos(b)
                 for a, b in map(_leg_angles, (self.phase, self.phase + math.pi))]
        self.shoe_h = 0.025 * u
        self.hip_y = self.feet_y - self.shoe_h - max(drops)
        top = self.hip_y - 0.49 * u
        self.sy = top + 0.17 * u  # shoulder line
        depth = 0.62 if side else 1.0  # a side view sees the torso's depth, not its width
        self.shw, self.whw = 0.125 * u * bw * depth, 0.098 * u * bw * depth
        self.hx, self.hy = cx + side * 0.01 * u, top + 0.064 * u
        self.rx, self.ry = 0.047 * u * (0.9 + 0.1 * bw), 0.064 * u
        self.arm_r, self.fore_r, self.hand_r = 0.028 * u * (0.9 + 0.1 * bw), 0.023 * u, 0.024 * u
        self.thigh_r, self.shin_r = 0.042 * u * bw, 0.031 * u * (0.8 + 0.2 * bw)

    def draw(self) -> Figure:
        cx, u, sy, side, phase = self.cx, self.u, self.sy, self.side, self.phase
        if side:
            # Far limbs first, the torso over them, then near limbs: a person seen from the side.
            self.arm((cx - side * 0.01 * u, sy + 0.03 * u), phase, ARM_A, 0.0)
            hip = (cx, self.hip_y - 0.01 * u)
            self.leg(hip, phase + math.pi, LEG_A, 0.0)
            self.pelvis()
            self.leg(hip, phase, LEG_B, 0.0)
            self.neck()
            self.torso()
            if self.hair_length == "long":
                self.long_hair(self.rx * 0.55, sy + 0.09 * u)
            self.head()
            self.headwear()
            self.back_bag()
            hand = self.arm((cx + side * 0.01 * u, sy + 0.03 * u), phase + math.pi, ARM_B, 0.0)
            if self.bag == "handbag":
                self.handbag(hand)
            return self
        if self.view == "front" and self.hair_length == "long":
            self.long_hair(self.rx * 1.08, sy + 0.08 * u)
        for s, p, label in ((-1, phase, LEG_A), (1, phase + math.pi, LEG_B)):
            self.leg((cx + s * 0.052 * u * self.bw, self.hip_y), p, label, s * 0.012 * u)
        self.pelvis()
        self.neck()
        self.torso()
        self.back_bag()
        hands = {s: self.arm((cx + s * (self.shw - 0.022 * u), sy + 0.03 * u), p, label, s * 0.03 * u)
                 for s, p, label in ((-1, phase + math.pi, ARM_A), (1, phase, ARM_B))}
        if self.bag == "handbag":  # carried in the right hand: image left from the front
            self.handbag(hands[-1 if self.view == "front" else 1])
        self.head()
        if self.view == "back" and self.hair_length == "long":  # long hair falls over the back
            self.long_hair(self.rx * 1.0, sy + 0.11 * u)
        self.headwear()
        return self

    def leg(self, root: Point, p: float, label: int, spread: float) -> None:
        u, shin_r = self.u, self.shin_r
        knee, ankle = _limb(root, *_leg_angles(p), self.l_thigh, self.l_shin, self.side, spread)
        self.pen.capsule(root, knee, self.thigh_r, shin_r * 1.15, label)
        self.pen.capsule(knee, ankle, shin_r * 1.15, shin_r * 1.05, label)
        self.limbs[label] = (root, knee, ankle)
        toe = self.side * 0.028 * u
        self.pen.ellipse(ankle[0] + toe, ankle[1] + self.shoe_h * 0.35, 0.036 * u + abs(toe),
                         self.shoe_h * 0.85, SHOE)

    def arm(self, root: Point, p: float, label: int, spread: float) -> Point:
        """Draws the arm and its hand; returns where a handbag hangs."""
        fore_r, hand_r = self.fore_r, self.hand_r
        elbow, wrist = _limb(root, *_arm_angles(p), self.l_up, self.l_fore, self.side, spread)
        self.pen.capsule(root, elbow, self.arm_r, fore_r, label)
        self.pen.capsule(elbow, wrist, fore_r, fore_r * 0.9, label)
        self.limbs[label] = (root, elbow, wrist)
        self.pen.ellipse(wrist[0], wrist[1] + hand_r * 0.6, hand_r, hand_r * 1.15, HAND)
        return (wrist[0], wrist[1] + hand_r * 1.2)

    def pelvis(self) -> None:
        cx, whw, hip_y, u = self.cx, self.whw, self.hip_y, self.u
        self.pen.poly([(cx - whw, hip_y - 0.04 * u), (cx + whw, hip_y - 0.04 * u),
                       (cx + whw * 0.95, hip_y + 0.05 * u), (cx - whw * 0.95, hip_y + 0.05 * u)], PELVIS)

    def torso(self) -> None:
        cx, shw, whw, sy, u = self.cx, self.shw, self.whw, self.sy, self.u
        c = 0.035 * u
        self.pen.poly([(cx - shw, sy + c), (cx - shw + c, sy), (cx + shw - c, sy), (cx + shw, sy + c),
                       (cx + whw, self.hip_y), (cx - whw, self.hip_y)], TOP)
        if self.texture == "logo" and self.view == "front":  # a star on the chest, hidden from behind
            y, r = sy + 0.1 * u, 0.042 * u
            star = [(r if i % 2 == 0 else r * 0.45, i * math.pi / 5) for i in range(10)]  # (radius, angle)
            self.pen.poly([(cx + d * math.sin(a), y - d * math.cos(a)) for d, a in star], LOGO)

    def neck(self) -> None:
        u = self.u
        self.pen.capsule((self.hx, self.hy + self.ry * 0.6), (self.cx, self.sy + 0.01 * u), 0.02 * u,
                         0.024 * u, SKIN)

    def head_shape(self, label: int, x: float, y: float, a: float, b: float, *arc: float) -> None:
        """One shape of _HEAD: its centre and radii in head units, mirrored with the view."""
        cx, cy = self.hx + (self.side or 1.0) * self.rx * x, self.hy + self.ry * y
        if arc:
            self.pen.chord(cx, cy, self.rx * a, self.ry * b, *arc, label)
        else:
            self.pen.ellipse(cx, cy, self.rx * a, self.ry * b, label)

    def head(self) -> None:
        if self.view == "front":
            shapes = _HEAD["front"] + ((_SHORT_CUT,) if self.hair_length == "short" else ()) + _EYES
        else:
            shapes = _HEAD["side" if self.side else "back"]
        for shape in shapes:
            self.head_shape(*shape)

    def long_hair(self, width: float, bottom: float) -> None:
        hx, hy, rx, shift = self.hx, self.hy, self.rx, self.side * self.rx
        self.pen.ellipse(hx - shift * 0.25, hy, rx * 1.12, self.ry * 1.02, HAIR)
        self.pen.rect(hx - width - shift * 0.3, hy, hx + width - shift * 0.3, bottom, HAIR)
        self.pen.ellipse(hx - shift * 0.3, bottom, width, 0.02 * self.u, HAIR)

    def headwear(self) -> None:
        hx, hy, rx, ry = self.hx, self.hy, self.rx, self.ry
        if self.hat == "cap":
            self.head_shape(*_CAP)
            if self.side or self.view == "front":
                self.head_shape(*_CAP_BRIM["side" if self.side else "front"])
            else:
                self.pen.rect(hx - rx * 0.3, hy - ry * 0.42, hx + rx * 0.3, hy - ry * 0.22, HAT_DARK)
        elif self.hat == "beanie":
            self.head_shape(*_BEANIE)
            self.pen.rect(hx - rx * 1.12, hy - ry * 0.38, hx + rx * 1.12, hy - ry * 0.08, HAT_DARK)
            self.pen.ellipse(hx, hy - ry * 1.22, rx * 0.3, rx * 0.3, HAT_DARK)  # pom-pom

    def back_bag(self) -> None:
        if self.bag == "backpack":
            self.backpack()
        elif self.bag == "shoulder":
            self.shoulder_bag()

    def backpack(self) -> None:
        cx, shw, sy, u, side, pen = self.cx, self.shw, self.sy, self.u, self.side, self.pen
        if self.view == "front":  # only the straps show
            for s in (-1, 1):
                pen.poly([(cx + s * shw * 0.5, sy - 0.004 * u), (cx + s * shw * 0.72, sy - 0.004 * u),
                          (cx + s * shw * 0.66, sy + 0.2 * u), (cx + s * shw * 0.48, sy + 0.2 * u)], BAG_DARK)
        elif self.view == "back":
            x0, x1, y0, y1 = cx - shw * 0.78, cx + shw * 0.78, sy + 0.01 * u, sy + 0.27 * u
            pen.rect(x0, y0 + 0.03 * u, x1, y1, BAG)
            pen.ellipse(cx, y0 + 0.03 * u, shw * 0.78, 0.03 * u, BAG)
            pen.rect(x0 + 0.02 * u, y1 - 0.09 * u, x1 - 0.02 * u, y1 - 0.015 * u, BAG_DARK)
        else:
            back = cx - side * shw
            pen.rect(min(back, back - side * 0.1 * u), sy + 0.01 * u, max(back, back - side * 0.1 * u),
                     sy + 0.25 * u, BAG)
            pen.capsule((back, sy + 0.005 * u), (back + side * 0.02 * u, sy + 0.12 * u), 0.01 * u, 0.01 * u,
                        BAG_DARK)

    def shoulder_bag(self) -> None:
        """The strap runs from the left shoulder to the right hip: mirrored between front and back."""
        cx, shw, whw, sy, hip_y, u, side = self.cx, self.shw, self.whw, self.sy, self.hip_y, self.u, self.side
        if side:
            p, q = (cx + side * shw * 0.3, sy), (cx - side * shw * 0.4, hip_y - 0.01 * u)
            bx = cx - side * shw * 0.2
        else:
            s = -1.0 if self.view == "front" else 1.0
            p, q = (cx - s * shw * 0.62, sy - 0.003 * u), (cx + s * whw * 0.85, hip_y - 0.02 * u)
            bx = cx + s * (whw + 0.03 * u)
        self.pen.capsule(p, q, 0.011 * u, 0.011 * u, BAG_DARK)
        self.pen.rect(bx - 0.06 * u, hip_y - 0.05 * u, bx + 0.06 * u, hip_y + 0.07 * u, BAG)
        self.pen.rect(bx - 0.06 * u, hip_y - 0.05 * u, bx + 0.06 * u, hip_y - 0.015 * u, BAG_DARK)

    def handbag(self, hand: Point) -> None:
        (x, y), u = hand, self.u
        self.pen.capsule((x - 0.03 * u, y + 0.015 * u), (x, y - 0.01 * u), 0.006 * u, 0.006 * u, BAG_DARK)
        self.pen.capsule((x, y - 0.01 * u), (x + 0.03 * u, y + 0.015 * u), 0.006 * u, 0.006 * u, BAG_DARK)
        self.pen.poly([(x - 0.045 * u, y + 0.015 * u), (x + 0.045 * u, y + 0.015 * u),
                       (x + 0.055 * u, y + 0.1 * u), (x - 0.055 * u, y + 0.1 * u)], BAG)
